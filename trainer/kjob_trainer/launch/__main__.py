"""`python -m kjob_trainer.launch [--hold] -- COMMAND`: see pid1.py."""

import sys

from kjob_trainer.launch.pid1 import main

sys.exit(main())
