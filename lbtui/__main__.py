import sys

from lbtui.cli import main

sys.exit(main())
