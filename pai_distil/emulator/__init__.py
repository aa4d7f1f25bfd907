"""A local PAI: OSS, DLC and DSW APIs on 127.0.0.1 that the real Alibaba Cloud SDK clients talk to."""
