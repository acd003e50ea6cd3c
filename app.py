#!/usr/bin/env python3
"""CDK entry point: `python app.py` or `npx aws-cdk@2 synth` (see docs/deploy.md).

`TOKEX_SYNTH_WITHOUT_BUNDLING=1` skips building the Lambda layer (CDK's own
`aws:cdk:bundling-stacks` context): a synth with no network at all, to check the template
and cdk-nag; its layer asset is a placeholder, so deploy from a normal synth.
"""

import os

from cdk.tokex_stack import build_app

offline = os.environ.get("TOKEX_SYNTH_WITHOUT_BUNDLING") == "1"
app, _stack = build_app(context={"aws:cdk:bundling-stacks": []} if offline else None)
app.synth()
