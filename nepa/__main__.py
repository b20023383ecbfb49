import sys

from nepa.cli import main

sys.exit(main())
