"""The ``densnet`` command: the user's entry point, on top of ``flows`` and ``densnet_core``.

It lives outside ``densnet_core`` because it starts Prefect flows, and ``densnet_core`` never
imports Prefect.
"""
