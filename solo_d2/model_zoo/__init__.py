"""Find solo_d2's YAML configs from a source checkout or an installed package."""

from pathlib import Path

from ..config import get_cfg

_PKG_CONFIGS = Path(__file__).resolve().parent / "configs"
_REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def configs_root() -> Path:
    for root in (_PKG_CONFIGS, _REPO_CONFIGS):
        if root.is_dir():
            return root
    raise FileNotFoundError(f"solo_d2 configs not found in {_PKG_CONFIGS} or {_REPO_CONFIGS}")


def get_config_file(config_path: str) -> str:
    """Absolute path of a solo_d2 config, e.g. ``get_config_file("SOLOv2/R50_1x.yaml")``."""
    path = configs_root() / config_path
    if not path.is_file():
        known = sorted(str(p.relative_to(configs_root())) for p in configs_root().rglob("*.yaml"))
        raise FileNotFoundError(
            f"{config_path} is not a solo_d2 config; available: {', '.join(known)}"
        )
    return str(path)


def get_config(config_path: str):
    """A full solo_d2 config (all keys added) merged from ``config_path``."""
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(config_path))
    return cfg


def list_configs():
    return sorted(str(p.relative_to(configs_root())) for p in configs_root().rglob("*.yaml"))
