"""`python -m keras_batchtune`: the command line."""

import sys

from keras_batchtune.cli import main

sys.exit(main())
