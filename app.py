#!/usr/bin/env python3
"""CDK entry point: `npx --yes aws-cdk@2 synth` or `python app.py` (see docs/deploy.md).

Run by the CDK CLI, the app writes where the CLI says (`CDK_OUTDIR`, from `--output`);
run directly, it writes `./cdk.out`, as `cdk synth` does by default.

`TOKEX_SYNTH_WITHOUT_BUNDLING=1` skips building the Lambda layer (CDK's own
`aws:cdk:bundling-stacks` context, applied after the CLI's so that it wins there too): a
synth with no network at all, to check the template and cdk-nag; its layer asset is a
placeholder, so deploy from a normal synth.
"""

import os
import sys

from aws_cdk import Stack

from cdk.config import ConfigError
from cdk.layer_bundling import BUNDLING_FAILED
from cdk.tokex_stack import build_app


def main() -> int:
    offline = os.environ.get("TOKEX_SYNTH_WITHOUT_BUNDLING") == "1"
    under_cdk_cli = bool(os.environ.get("CDK_OUTDIR"))
    outdir = os.environ.get("CDK_OUTDIR") or "cdk.out"
    try:
        app, stack = build_app(
            post_cli_context={"aws:cdk:bundling-stacks": []} if offline else None,
            outdir=outdir,
        )
    except ConfigError as exc:
        # The message names the context key; a traceback would only bury it.
        print(f"tokex: invalid CDK context: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        # A layer that cannot be built here (pip, the bytecode compiler) is the operator's
        # to fix: its message (pip's own output included) without the stack. Raised in
        # CDK's bundling callback, it comes back as jsii's RuntimeError with the text only.
        text = str(exc)
        if BUNDLING_FAILED not in text:
            raise
        print(text[text.index(BUNDLING_FAILED) :].rstrip(), file=sys.stderr)
        return 1
    try:
        app.synth()
    except RuntimeError as exc:  # jsii's JavaScriptError
        if "ValidationFailed" not in str(exc):
            raise
        # cdk-nag printed each finding above; the jsii trace would only bury them.
        print("tokex: synth refused: cdk-nag findings above", file=sys.stderr)
        return 1
    if not under_cdk_cli:
        # The home stack first; a multi-Region app also has each Region's stacks.
        stacks = [stack, *(s for s in app.node.children if isinstance(s, Stack) and s is not stack)]
        for each in stacks:
            print(f"wrote {os.path.join(outdir, each.template_file)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
