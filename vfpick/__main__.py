import sys

from vfpick.cli import main

sys.exit(main())
