"""tokex_functions: the Lambda handlers (one subpackage per function) and the HTTP plumbing
they share (`http_endpoint`).

Installed with the `tokex` distribution from this folder (setup.py), so local mode
imports the code that cdk/functions.py puts in each function's asset. Not in the core
layer, which stays free of Powertools' event handling.
"""
