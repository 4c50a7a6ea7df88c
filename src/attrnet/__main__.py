import sys

from attrnet.cli import main

sys.exit(main())
