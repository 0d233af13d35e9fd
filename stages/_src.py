"""Put this checkout's src/ first on the path, also inside DVC's temporary experiment copies."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
