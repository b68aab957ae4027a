def add_bisenet_config(cfg):
    from ...config import add_common_config

    add_common_config(cfg)
    return cfg
