"""Stage entry modules (`python -m stages.<name>`), one per DVC stage."""
import os

# Must precede the first torch import. OpenMP's default spin-waiting makes 2 torch threads run
# 10-100x slower whenever another process wants a core (a shared laptop or CI runner);
# passive waiting costs little when the machine is idle. A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
