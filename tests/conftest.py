import sys
from pathlib import Path

# tests/reference.py is shared by the tests and bench/step.py
sys.path.insert(0, str(Path(__file__).parent))
