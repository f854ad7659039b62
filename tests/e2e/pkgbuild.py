"""Building imapd-ctl's packages for the tests with the distributions' own tools, and reading
them back.

* the .deb: ``scripts/build-deb`` (``dpkg-buildpackage -us -uc -b``) on this machine (Debian 12)
  or inside a booted test host (Debian 13), from this tree or from a copy of it;
* the RPM: ``rpmbuild -bb --nodeps`` of packaging/rpm/imapd-ctl.spec, its Source0 made by
  ``git archive`` as packaging/README.md says (Debian has no RPM database for BuildRequires);
* lintian's findings, and what each package installs (path, mode, owner), to compare them.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "packaging" / "rpm" / "imapd-ctl.spec"
# Any fixed time: two builds of one tree must give the same bytes.
EPOCH = "1700000000"
# Debian's python3 and build tools, whatever else (a pyenv) this machine has first on PATH.
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# The line the "next version" adds to each of its conffiles (the upgrade test).
NEXT_VERSION_LINE = "# imapd-ctl test: this line is new in the next packaged version\n"


def _git_files(repo: Path) -> list[str]:
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and os.path.lexists(repo / f)]


def build_deb(outdir: Path, version: str | None = None, repo: Path = REPO) -> tuple[Path, float]:
    """scripts/build-deb of `repo` on this machine: (the .deb, seconds)."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "PATH": DEBIAN_PATH}
    env.pop("IMAPD_CTL_DEB_VERSION", None)
    if version:
        env["IMAPD_CTL_DEB_VERSION"] = version
    t0 = time.monotonic()
    r = subprocess.run([str(repo / "scripts" / "build-deb"), str(outdir)], capture_output=True, text=True,
                       env=env, timeout=300)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return Path(r.stdout.strip().splitlines()[-1]), took


def build_deb_in_host(host, tree: Path, outdir: Path, version: str | None = None) -> tuple[Path, float]:
    """scripts/build-deb of `tree` (a copy from source_tree(), bind-mounted) inside a booted
    test host, with that distribution's dpkg-buildpackage and debhelper."""
    env = ["env", f"SOURCE_DATE_EPOCH={EPOCH}", f"PATH={DEBIAN_PATH}"]
    if version:
        env.append(f"IMAPD_CTL_DEB_VERSION={version}")
    t0 = time.monotonic()
    r = host.run([*env, str(tree / "scripts" / "build-deb"), str(outdir)], check=False, timeout=600)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return Path(r.stdout.strip().splitlines()[-1]), took


def source_tree(dest: Path, *, next_version: bool = False) -> Path:
    """A copy of this tree (the files git knows, as a clean clone plus local edits) in a git
    repository of its own, so that it builds where this checkout's .git is not mounted. With
    `next_version`, each conffile gains NEXT_VERSION_LINE: the package of a next version whose
    settings file and logrotate file changed."""
    for f in _git_files(REPO):
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / f).is_symlink():
            os.symlink(os.readlink(REPO / f), target)
        else:
            shutil.copy2(REPO / f, target)
    if next_version:
        for conffile in ("config/imapd-ctl.toml", "packaging/logrotate/imapd-ctl"):
            with open(dest / conffile, "a") as fh:
                fh.write(NEXT_VERSION_LINE)
    subprocess.run(["git", "init", "-q", str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "add", "-A"], check=True)
    return dest


def build_rpm(workdir: Path) -> tuple[Path, float]:
    """rpmbuild -bb --nodeps of the spec; Source0 is `git archive` of this tree (HEAD plus the
    tracked files' local edits: `git stash create`)."""
    top = workdir / "rpmbuild"
    (top / "SOURCES").mkdir(parents=True)
    version = re.search(r"^Version:\s*(\S+)", SPEC.read_text(), re.M).group(1)
    tree = subprocess.run(["git", "-C", str(REPO), "stash", "create"], capture_output=True, text=True,
                          check=True).stdout.strip() or "HEAD"
    subprocess.run(["git", "-C", str(REPO), "archive", f"--prefix=imapd-ctl-{version}/",
                    "-o", str(top / "SOURCES" / f"imapd-ctl-{version}.tar.gz"), tree], check=True)
    t0 = time.monotonic()
    r = subprocess.run(["rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {top}", str(SPEC)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": DEBIAN_PATH})
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return next((top / "RPMS" / "noarch").glob("imapd-ctl-*.noarch.rpm")), took


# Info and pedantic tags that stay, each explained in packaging/README.md ("lintian"). An
# override would do for one release only: Debian 13's lintian no longer knows this tag and
# calls an override of it an error.
EXPLAINED_TAGS = {"package-supports-alternative-init-but-no-init.d-script"}


def build_source(workdir: Path) -> Path:
    """The Debian source package (.dsc): the orig tarball and the tree from `git archive` of
    this tree, as a maintainer would make it, then `dpkg-buildpackage -S -us -uc`."""
    version = re.search(r"\((\S+)-[^-)]+\)", (REPO / "debian" / "changelog").read_text()).group(1)
    tree = subprocess.run(["git", "-C", str(REPO), "stash", "create"], capture_output=True, text=True,
                          check=True).stdout.strip() or "HEAD"
    subprocess.run(["git", "-C", str(REPO), "archive", f"--prefix=imapd-ctl-{version}/", "-o",
                    str(workdir / f"imapd-ctl_{version}.orig.tar.gz"), tree, "--", ".", ":!debian"], check=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--prefix=imapd-ctl/", tree], capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(workdir)
    r = subprocess.run(["dpkg-buildpackage", "-S", "-us", "-uc"], cwd=workdir / "imapd-ctl", capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PATH": DEBIAN_PATH})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return next(workdir.glob("imapd-ctl_*.dsc"))


def lintian_findings(output: str) -> list[str]:
    """lintian's tags that are neither fixed nor overridden nor in EXPLAINED_TAGS: errors,
    warnings, info, pedantic, experimental (O: overridden, N: notes, M: masked by lintian
    itself do not count; errors and warnings count even if explained)."""
    found = []
    for line in output.splitlines():
        m = re.match(r"([EWIPX]): \S+: (\S+)", line)
        if m and not (m.group(1) in "IP" and m.group(2) in EXPLAINED_TAGS):
            found.append(line)
    return found


def uncommented_overrides(text: str) -> list[str]:
    """Override lines of a lintian-overrides file without a comment (the reason) right above
    them or above the block of overrides they belong to."""
    bad, previous = [], ""
    for line in text.splitlines():
        if line.strip() and not line.startswith("#") and not previous.startswith(("#", "imapd-ctl:")):
            bad.append(line)
        previous = line.strip() and line
    return bad


def deb_entries(deb: Path) -> dict[str, tuple[str, str, str, str]]:
    """path -> (type "d"/"f"/"l", octal mode, owner, group), as dpkg will install them."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            path = "/" + m.name.lstrip("./")
            kind = "d" if m.isdir() else "l" if m.issym() else "f"
            out[path.rstrip("/") or "/"] = (kind, f"{m.mode & 0o7777:04o}", m.uname, m.gname)
    return out


def rpm_entries(rpm: Path) -> dict[str, tuple[str, str, str, str]]:
    query = "[%{FILENAMES}\t%{FILEMODES:octal}\t%{FILEUSERNAME}\t%{FILEGROUPNAME}\n]"
    out = {}
    for line in subprocess.run(["rpm", "-qp", "--queryformat", query, str(rpm)], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        path, mode, user, group = line.split("\t")
        kind = {0o040000: "d", 0o120000: "l"}.get(int(mode, 8) & 0o170000, "f")
        out[path] = (kind, f"{int(mode, 8) & 0o7777:04o}", user, group)
    return out


def deb_conffiles(deb: Path) -> set[str]:
    data = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("./conffiles")
        return set(member.read().decode().split()) if member else set()


def deb_file(deb: Path, path: str) -> bytes:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.extractfile("." + path).read()
