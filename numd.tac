"""numd as a .tac file: ``twistd -ny numd.tac`` runs the daemon with its defaults.

Options can be given in the NUMD_OPTIONS environment variable, exactly as on the
``twistd numd`` command line, e.g. ``NUMD_OPTIONS="--listen tcp:2005" twistd -ny numd.tac``.
A mistake in them is two lines and exit status 2, as under ``twistd numd``.
"""

import os
import shlex

from twisted.application.service import Application
from twisted.python import usage

from numd.signals import exit_on_usage_error
from numd.tap import Options, makeService

options = Options()
try:
    options.parseOptions(shlex.split(os.environ.get("NUMD_OPTIONS", "")))
except ValueError as e:  # shlex: an unclosed quote
    exit_on_usage_error(usage.UsageError(f"NUMD_OPTIONS: {e}"), "numd.tac", "twistd numd")
except usage.UsageError as e:
    exit_on_usage_error(e, "numd.tac (NUMD_OPTIONS)", "twistd numd")
application = Application("numd")
makeService(options).setServiceParent(application)
