"""numd as a .tac file: ``twistd -ny numd.tac`` runs the daemon with its defaults.

Options can be given in the NUMD_OPTIONS environment variable, exactly as on the
``twistd numd`` command line, e.g. ``NUMD_OPTIONS="--listen tcp:2005" twistd -ny numd.tac``.
"""

import os
import shlex

from twisted.application.service import Application

from numd.tap import Options, makeService

options = Options()
options.parseOptions(shlex.split(os.environ.get("NUMD_OPTIONS", "")))
application = Application("numd")
makeService(options).setServiceParent(application)
