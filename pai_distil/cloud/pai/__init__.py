"""Alibaba Cloud PAI from the client: configuration, credentials, OSS transfers, DLC jobs, DSW instances."""
