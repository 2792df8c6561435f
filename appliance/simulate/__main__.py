import sys
import warnings

# the simulator reads no HTCondor configuration; outside the appliance the
# bindings warn that there is none, which here is noise
warnings.filterwarnings("ignore", message="Neither the environment variable CONDOR_CONFIG")

from .cli import main  # noqa: E402

sys.exit(main())
