from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return Path(os.environ.get("ABLATION_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session", autouse=True)
def private_cache_and_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point $ABLATION_CACHE and $ABLATION_DATA at this session's temporary folder for every test.

    Without them data is cached in the checkout's ``.cache/ablation`` and named datasets are looked up in its
    ``data/``: tests would write there and could pass only because of what an earlier run left there. The data
    folder is empty; tests on the real datasets pass ``shared_datasets`` explicitly, and a test may still set
    either variable itself (monkeypatch restores this session's value after it).
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ABLATION_CACHE", str(tmp_path_factory.mktemp("ablation-cache")))
        patch.setenv("ABLATION_DATA", str(tmp_path_factory.mktemp("ablation-data")))
        yield


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real GlaS/MoNuSeg folders beside the checkout; tests using this skip when they are absent."""
    path = _shared_dir() / "datasets"
    if not (path / "GlaS").is_dir() or not (path / "MoNuSeg").is_dir():
        pytest.skip(f"real datasets not found at {path}")
    return path


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and OpenMP spin-waits make a shared 2-core machine crawl.

    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    path = _shared_dir() / "reference"
    if not path.is_dir():
        pytest.skip(f"reference facts not found at {path}")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
