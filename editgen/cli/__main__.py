import sys

from editgen.cli import main

sys.exit(main())
