"""twistd plugins for numd: ``twistd numd`` (the daemon) and ``twistd numd-client``."""

from twisted.application.service import ServiceMaker

numd = ServiceMaker("numd", "numd.tap", "The numd number service daemon", "numd")
numd_client = ServiceMaker("numd-client", "numd.client.tap", "A numd counter client", "numd-client")
