"""DSW debug instances through `pai-distil dsw` and the real DSW SDK against the emulator."""

from __future__ import annotations

import json

import oss2
from emulator_support import ACCESS_KEY_ID, ACCESS_KEY_SECRET, BUCKET, cli, configure, start_emulator


def test_dsw_create_list_stop_delete_mirrors_a_pai_run(tmp_path):
    with start_emulator(tmp_path / "emu") as emu:
        home = tmp_path / "home"
        configure(home, emu)
        refused = cli(home, "dsw", "list", secret="wrong-secret")
        assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
        assert refused.stderr.startswith("error: PAI-DSW refused the credentials (SignatureDoesNotMatch)")

        # a pai run to mirror: submitted for real, so its inputs are in OSS (its job may do as it likes)
        cots = tmp_path / "cots.jsonl"
        cots.write_text('{"id": "1", "problem": "1+1", "answer": "2", "thought": "t", "solution": "2", "correct": true}\n')
        sub = cli(home, "submit", "slow-thinking", "-i", f"cots={cots}", "--backend", "pai", "--detach")
        assert sub.returncode == 0, sub.stderr[-2000:]
        run_id = next((home / "runs").iterdir()).name

        created = cli(home, "dsw", "create", run_id)
        assert created.returncode == 0, created.stderr
        instance_id = created.stdout.split()[2]
        listed = cli(home, "dsw", "list")
        assert instance_id in listed.stdout and "Running" in listed.stdout and run_id[:20] in listed.stdout

        state = json.loads((emu.data_dir / "state" / "dsw-instances" / f"{instance_id}.json").read_text())
        mounts = {d["MountPath"]: d for d in state["Datasets"]}
        assert mounts["/mnt/pai-distil/inputs/cots"]["MountAccess"] == "RO"
        assert state["EnvironmentVariables"]["PAI_DISTIL_INPUT_COTS"] == "/mnt/pai-distil/inputs/cots/cots.jsonl"
        index = state["Datasets"].index(mounts["/mnt/pai-distil/inputs/cots"])
        assert (emu.data_dir / "dsw" / instance_id / "mounts" / str(index) / "cots.jsonl").read_text() == cots.read_text()

        assert cli(home, "dsw", "stop", instance_id).returncode == 0
        assert "Stopped" in cli(home, "dsw", "list").stdout
        assert cli(home, "dsw", "delete", instance_id).returncode == 0
        assert instance_id not in cli(home, "dsw", "list").stdout
        missing = cli(home, "dsw", "delete", instance_id)
        assert missing.returncode != 0 and "PAI-DSW error 100030001" in missing.stderr
        from pai_distil.cloud.pai.oss import split_uri

        bucket, prefix = split_uri(mounts["/mnt/pai-distil/inputs/cots"]["Uri"])  # oss://BUCKET.internal-host/...
        assert bucket == BUCKET and oss2.Bucket(oss2.Auth(ACCESS_KEY_ID, ACCESS_KEY_SECRET), emu.url, BUCKET).object_exists(
            prefix + "cots.jsonl")
        # the detached run's supervisor follows its job for as long as it lives: stop the job while DLC is here
        assert cli(home, "runs", "cancel", run_id).returncode == 0
