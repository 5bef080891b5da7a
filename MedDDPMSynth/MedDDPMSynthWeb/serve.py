"""``medddpm-synth serve``: the Slicer module's workflow in a browser (the MedDDPMSynthWeb package).

The engine's command line adds this sub-command through the ``medddpm_synth.commands`` entry point
(pyproject.toml), so the engine never imports the web front. trame-slicer and slicer-core are imported
only when the command runs, so the rest of the command line works without the ``web`` extra.
"""

from __future__ import annotations

import argparse

from MedDDPMSynthLib.errors import InputError

SERVE_EPILOG = """examples:
  medddpm-synth serve                                   # prints http://127.0.0.1:8080/?token=... (this machine only)
  medddpm-synth serve --host 0.0.0.0 --token SECRET     # on the network: every request needs the token
  MEDDDPMSYNTH_TOKEN=SECRET medddpm-synth serve --host 0.0.0.0 --model wholehead

Every request needs the access token, also on 127.0.0.1: any web page open in your browser can send
requests to this machine. Open the printed URL once; the page keeps the token in a cookie. Requests from
another site's page (Origin) and, on loopback, for another host name (Host, DNS rebinding) are refused.
--no-token (loopback only) drops the token for a single-user machine whose browser visits no untrusted pages.
"""


def add_parser(commands) -> None:
    p = commands.add_parser("serve", help="serve the generation workflow as a web page",
                            description=__doc__, epilog=SERVE_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--model", default="demo", help="model preselected in the page: demo or an imported model's "
                                                   "name (default demo); the page offers only these")
    p.add_argument("--token", help="access token required on every request (default: $MEDDDPMSYNTH_TOKEN, else a "
                                   "new one, printed in the URL)")
    p.add_argument("--no-token", action="store_true",
                   help="serve without a token (loopback only; any page in your browser can then use the server)")
    p.add_argument("--max-upload-mb", type=int, default=512, help="largest accepted upload (default 512)")
    p.set_defaults(run=run)


def run(args) -> int:
    try:
        from . import app, security
    except ImportError as error:
        raise InputError(f"the web front needs extra packages ({error.name} is missing): "
                         'pip install "medddpm-synth[web]"') from None
    try:
        token, generated = security.resolve_token(args.host, args.token, no_token=args.no_token)
    except security.NoTokenRefused as error:
        raise InputError(str(error)) from None
    if generated:
        print("generated an access token for this server; open the URL below (share it only with people who may "
              "use this server)", flush=True)
    app.serve(args.host, args.port, token, args.model, args.max_upload_mb * 1024 * 1024)
    return 0
