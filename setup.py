"""Which packages the `tokex` distribution holds, and from which folder; the rest of the
metadata is in pyproject.toml.

Two import packages, one distribution:
- `tokex`, the core library, from layers/core/tokex (the runtime part is the Lambda layer;
  cdk/layer_bundling.py leaves the tooling - CLI, local mode, Kong generator, workload
  client - out of it);
- `tokex_functions`, the Lambda handlers and their shared HTTP plumbing, from functions/
  (cdk/functions.py builds each function's asset from this package; local mode imports it).

Only this file can say it: pyproject's declarative `packages.find` cannot give a package a
name other than its folder's (`functions` would be a poor top-level name in site-packages).
"""

from setuptools import find_namespace_packages, find_packages, setup

setup(
    package_dir={"": "layers/core", "tokex_functions": "functions"},
    packages=[
        # Namespace packages too: the folders of AWS's instance-identity certificates
        # (tokex/evidence/certs/...) hold data only, and setuptools ships a data folder
        # only as a package (it warns that others would be dropped).
        *find_namespace_packages(
            "layers/core", include=["tokex", "tokex.*"], exclude=["*.__pycache__"]
        ),
        "tokex_functions",
        *(f"tokex_functions.{name}" for name in find_packages("functions")),
    ],
)
