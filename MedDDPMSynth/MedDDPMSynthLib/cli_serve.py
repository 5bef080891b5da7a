"""``medddpm-synth serve``: the Slicer module's workflow in a browser (the MedDDPMSynthWeb package).

The web package (trame-slicer, slicer-core) is imported only when the command runs, so the rest of the
command line works without the ``web`` extra.
"""

from __future__ import annotations

import argparse

from .errors import InputError

SERVE_EPILOG = """examples:
  medddpm-synth serve                                   # http://127.0.0.1:8080/ (this machine only)
  medddpm-synth serve --host 0.0.0.0 --token SECRET     # on the network: every request needs the token
  MEDDDPMSYNTH_TOKEN=SECRET medddpm-synth serve --host 0.0.0.0 --model wholehead
"""


def add_parser(commands) -> None:
    p = commands.add_parser("serve", help="serve the generation workflow as a web page",
                            description=__doc__, epilog=SERVE_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--model", default="demo", help="model preselected in the page (default demo)")
    p.add_argument("--token", help="access token required on every request (default: $MEDDDPMSYNTH_TOKEN; "
                                   "generated and printed when binding beyond loopback without one)")
    p.add_argument("--max-upload-mb", type=int, default=512, help="largest accepted upload (default 512)")
    p.set_defaults(run=run)


def run(args) -> int:
    try:
        from MedDDPMSynthWeb import app, security
    except ImportError as error:
        raise InputError(f"the web front needs extra packages ({error.name} is missing): "
                         'pip install "medddpm-synth[web]"') from None
    token, generated = security.resolve_token(args.host, args.token)
    if generated:
        print(f"binding to {args.host} (not loopback) without a token: generated one; share the URL below only "
              "with people who may use this server", flush=True)
    app.serve(args.host, args.port, token, args.model, args.max_upload_mb * 1024 * 1024)
    return 0
