from pathlib import Path
from uge_hf.demo import launch
launch(Path(__file__).resolve().parent)
