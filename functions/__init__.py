"""tokex_functions: the Lambda handlers (one subpackage per function) and the HTTP plumbing
they share (`http_endpoint`).

Installed with the `tokex` distribution from this folder (setup.py), so local mode
imports the code that cdk/functions.py puts in each function's asset. Not in the core
layer, which stays free of Powertools' event handling.
"""

from tokex_functions.collector import pause_in_lambda_runtime

# First, before any handler's imports: the collector pauses through the cold start
# (collector.py; in Lambda's runtime only).
pause_in_lambda_runtime()
