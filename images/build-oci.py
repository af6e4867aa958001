#!/usr/bin/env python3
"""Writes a single-layer OCI image archive from a directory, deterministically.

    images/build-oci.py --rootfs DIR --name registry.local/taimatsu/x:0.1.0 --out x.tar \
        [--entrypoint /bin/x] [--cmd ARG]... [--user 65532:65532] [--env K=V]... \
        [--expose 8000]... [--label K=V]...

No container daemon is needed (the CI and sandbox machines have none): the archive is an
OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) that
`ctr -n k8s.io images import` takes as it is; the ref name is in the index's
`io.containerd.image.name` annotation.

Deterministic: the same directory gives the same digests. Entries are sorted by name,
every mtime is SOURCE_DATE_EPOCH (0 when unset), owners are 0:0 with no names, and modes
are normalised (directories and executables 0755, other files 0644, /tmp 1777). The layer
is an uncompressed tar, so its digest is also its diff_id.
"""

import argparse
import datetime
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
INDEX = "application/vnd.oci.image.index.v1+json"


def tar_info(name, kind, mode, size=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, linkname
    info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "", ""
    return info


def layer_tar(rootfs):
    """The layer: every entry under rootfs, sorted, with normalised metadata."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            paths.append(os.path.join(dirpath, name))
    paths.sort(key=lambda p: os.path.relpath(p, rootfs))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in paths:
            name = os.path.relpath(path, rootfs)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                tar.addfile(tar_info(name, tarfile.SYMTYPE, 0o777, linkname=os.readlink(path)))
            elif stat.S_ISDIR(st.st_mode):
                tar.addfile(tar_info(name, tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755))
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                with open(path, "rb") as f:
                    tar.addfile(tar_info(name, tarfile.REGTYPE, mode, size=st.st_size), f)
            else:
                sys.exit(f"build-oci: {path}: only directories, files and symlinks belong in an image")
    return buf.getvalue()


def blob(out, data):
    """Adds data as blobs/sha256/<digest> to the archive; returns its descriptor fields."""
    digest = hashlib.sha256(data).hexdigest()
    out.addfile(tar_info(f"blobs/sha256/{digest}", tarfile.REGTYPE, 0o644, size=len(data)), io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def pairs(items):
    return dict(item.split("=", 1) for item in items)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rootfs", required=True)
    p.add_argument("--name", required=True, help="image reference, e.g. registry.local/taimatsu/pause:0.1.0")
    p.add_argument("--out", required=True)
    p.add_argument("--entrypoint", action="append", default=[])
    p.add_argument("--cmd", action="append", default=[])
    p.add_argument("--user", default="")
    p.add_argument("--workdir", default="/")
    p.add_argument("--env", action="append", default=["PATH=/usr/local/bin:/usr/bin:/bin"])
    p.add_argument("--expose", action="append", default=[])
    p.add_argument("--label", action="append", default=[])
    args = p.parse_args()

    layer = layer_tar(args.rootfs)
    created = datetime.datetime.fromtimestamp(EPOCH, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": args.user,
            "Env": args.env,
            "Entrypoint": args.entrypoint or None,
            "Cmd": args.cmd or None,
            "WorkingDir": args.workdir,
            "ExposedPorts": {f"{port}/tcp": {} for port in args.expose} or None,
            "Labels": pairs(args.label) or None,
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
        "history": [{"created": created, "created_by": "images/build-oci.py"}],
    }
    config["config"] = {k: v for k, v in config["config"].items() if v not in (None, "")}

    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as out:
        out.addfile(tar_info("blobs", tarfile.DIRTYPE, 0o755))
        out.addfile(tar_info("blobs/sha256", tarfile.DIRTYPE, 0o755))
        layer_desc = {"mediaType": LAYER, **blob(out, layer)}
        config_desc = {"mediaType": CONFIG, **blob(out, canonical(config))}
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config_desc, "layers": [layer_desc]}
        manifest_desc = {"mediaType": MANIFEST, **blob(out, canonical(manifest))}
        tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
        manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
        manifest_desc["annotations"] = {"io.containerd.image.name": args.name, "org.opencontainers.image.ref.name": tag}
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [manifest_desc]}
        for name, data in (("index.json", canonical(index)), ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')):
            out.addfile(tar_info(name, tarfile.REGTYPE, 0o644, size=len(data)), io.BytesIO(data))
    os.replace(tmp, args.out)
    print(manifest_desc["digest"])


if __name__ == "__main__":
    main()
