import sys

from s3kit.cli import main

sys.exit(main())
