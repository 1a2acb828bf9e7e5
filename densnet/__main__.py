from densnet.cli import app

app()
