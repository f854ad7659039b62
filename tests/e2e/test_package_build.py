"""The packages as the distributions build them, on this machine (Debian 12), with the real
tools and no test host: dpkg-buildpackage (through scripts/build-deb) for the .deb and the
source package, lintian on the source package (the .deb's lintian runs in test_package.py, once
per distribution, on the .deb built there), rpmbuild and rpmlint for the RPM.

The .deb builds reproducibly and installs what the docs and the lifecycle tests rely on; the
RPM builds from `git archive` with `rpmbuild -bb --nodeps`, passes rpmlint with no errors, and
installs the same files with the same modes, owners and conffiles as the .deb, apart from the
places where the two distributions differ (listed in CANON and DEB_ONLY below).
"""
from __future__ import annotations

import re
import subprocess

from pkgbuild import (REPO, SPEC, build_deb, build_rpm, build_source, deb_conffiles, deb_entries, deb_file,
                      lintian_findings, rpm_entries, uncommented_overrides)

DEPENDS = ("python3-flask", "python3-gunicorn", "python3-psutil", "python3-gi", "python3-prometheus-client",
           "python3-defusedxml", "python3-werkzeug", "polkitd", "systemd")

# Where Debian and RHEL put the same file differently: both sides are rewritten to one name.
CANON = (
    (r"^(/usr)?/lib/systemd/system/", "UNITS/"),                          # /lib on Debian 12
    (r"^/usr/lib/python3/dist-packages/", "PYTHON/"),                    # Debian's, for every 3.x
    (r"^/usr/lib/python3\.\d+/site-packages/", "PYTHON/"),               # RHEL's %{python3_sitelib}
    (r"^/usr/share/zsh/(vendor-completions|site-functions)/", "ZSH/"),   # where each one's zsh looks
    (r"^/usr/share/doc/imapd-ctl/README\.Debian$", "DOC/packaging README"),
    (r"^/usr/share/doc/imapd-ctl/README\.packaging\.md$", "DOC/packaging README"),
    (r"^/usr/share/(doc|licenses)/imapd-ctl/copyright$", "DOC/copyright"),  # %license on RHEL
    (r"^/usr/share/licenses/imapd-ctl$", "/usr/share/doc/imapd-ctl"),
)
# Only in the .deb: dpkg's changelog (the RPM's is in its header), lintian's overrides, and the
# wheel's metadata that pybuild installs (the spec copies the modules; on Fedora,
# %pyproject_install would add it, see packaging/README.md).
DEB_ONLY = (r"^/usr/share/doc/imapd-ctl/changelog\.Debian\.gz$", r"^/usr/share/lintian(/|$)",
            r"^PYTHON/imapd_ctl-[^/]+\.dist-info(/|$)")


def canon(path: str) -> str:
    for pattern, name in CANON:
        path = re.sub(pattern, name, path)
    return path


def test_deb_is_reproducible_and_installs_what_the_docs_name(built_deb, tmp_path):
    a, took = built_deb
    b, again = build_deb(tmp_path / "b")
    print(f"\ndpkg-buildpackage (scripts/build-deb): {took:.1f} s, again {again:.1f} s; {a.stat().st_size} bytes")
    assert a.read_bytes() == b.read_bytes(), "two builds of the same tree differ"
    info = subprocess.run(["dpkg-deb", "-f", str(a)], capture_output=True, text=True, check=True).stdout
    depends = [d.split()[0] for d in re.search(r"^Depends: (.*)$", info, re.M).group(1).split(", ")]
    assert set(DEPENDS) <= set(depends), depends
    assert re.search(r"^Description: .*\n(?: .*\n)*", info, re.M)
    for word in ("SOAP", "XML-RPC", "JSON", "Dovecot", "Courier", "InterWorx"):
        assert word in info, word
    files = deb_entries(a)
    for path in ("/usr/bin/imapd-ctl", "/usr/lib/python3/dist-packages/imapd_ctl/daemon/serve.py",
                 "/etc/imapd-ctl/imapd-ctl.toml", "/lib/systemd/system/imapd-ctl.service",
                 "/lib/systemd/system/imapd-ctl.socket", "/lib/systemd/system/imapd-ctl-enable@.service",
                 "/etc/logrotate.d/imapd-ctl", "/usr/share/man/man8/imapd-ctl.8.gz",
                 "/usr/share/bash-completion/completions/imapd-ctl", "/usr/share/zsh/vendor-completions/_imapd-ctl",
                 "/usr/lib/sysusers.d/imapd-ctl.conf", "/usr/lib/tmpfiles.d/imapd-ctl.conf",
                 "/usr/share/doc/imapd-ctl/README.md", "/usr/share/doc/imapd-ctl/docs/api.md"):
        assert path in files, path
    assert files["/usr/bin/imapd-ctl"][:2] == ("f", "0755")
    assert files["/etc/imapd-ctl/nodes"] == files["/etc/imapd-ctl/nodes.d"] == ("d", "0700", "root", "root")
    assert not [p for p in files if "__pycache__" in p or "site-packages" in p or ".venv" in p]
    # Debian's python3 runs it.
    assert deb_file(a, "/usr/bin/imapd-ctl").startswith(b"#!/usr/bin/python3\n")
    # The settings file as it is in config/, and the example it names, where it says.
    settings = deb_file(a, "/etc/imapd-ctl/imapd-ctl.toml")
    assert settings == (REPO / "config" / "imapd-ctl.toml").read_bytes()
    example = re.search(rb"see (/usr/share/doc/\S+\.toml)", settings).group(1).decode()
    assert deb_file(a, example) == (REPO / "config" / "nodes.example.toml").read_bytes()
    assert deb_conffiles(a) == {"/etc/imapd-ctl/imapd-ctl.toml", "/etc/logrotate.d/imapd-ctl"}


def test_rpm_spec_expands_and_passes_rpmlint():
    r = subprocess.run(["rpmspec", "-P", str(SPEC)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "/usr/lib/systemd/system/imapd-ctl.socket" in r.stdout
    assert "%{_sysusersdir}" not in r.stdout and "%systemd_post" not in r.stdout
    r = subprocess.run(["rpmlint", str(SPEC)], capture_output=True, text=True)
    print("\nrpmlint spec:", r.stdout.strip().splitlines()[-1])
    assert " 0 errors" in r.stdout, r.stdout


def test_rpm_builds_and_installs_what_the_deb_installs(built_deb, tmp_path):
    rpm, took = build_rpm(tmp_path)
    print(f"\nrpmbuild -bb --nodeps: {took:.1f} s, {rpm.name}")
    r = subprocess.run(["rpmlint", "-r", str(REPO / "packaging" / "rpm" / "rpmlint-filters"), str(rpm)],
                       capture_output=True, text=True)
    print("rpmlint rpm:", r.stdout.strip().splitlines()[-1])
    assert " 0 errors" in r.stdout, r.stdout
    arch = subprocess.run(["rpm", "-qp", "--queryformat", "%{ARCH}", str(rpm)], capture_output=True, text=True,
                          check=True).stdout
    assert arch == "noarch"
    deb_all, rpm_all = deb_entries(built_deb[0]), rpm_entries(rpm)
    deb = {canon(p): v for p, v in deb_all.items()}
    deb = {p: v for p, v in deb.items() if not any(re.search(x, p) for x in DEB_ONLY)}
    rpm_side = {canon(p): v for p, v in rpm_all.items() if "__pycache__" not in p}
    # Every file: the same set, modes and owners.
    deb_files = {p: v for p, v in deb.items() if v[0] != "d"}
    rpm_files = {p: v for p, v in rpm_side.items() if v[0] != "d"}
    assert sorted(set(deb_files) ^ set(rpm_files)) == []
    assert {p: (deb_files[p], rpm_files[p]) for p in deb_files if deb_files[p] != rpm_files[p]} == {}
    # The directories the RPM owns: as the .deb ships them, or (the daemon's state and log)
    # as the .deb's tmpfiles.d makes them at install.
    tmpfiles = {f[1]: ("d", f[2], f[3], f[4]) for f in (line.split() for line in
                deb_file(built_deb[0], "/usr/lib/tmpfiles.d/imapd-ctl.conf").decode().splitlines())
                if f and f[0] == "d"}
    assert set(tmpfiles) == {"/var/lib/imapd-ctl", "/var/log/imapd-ctl"}
    for path, attrs in rpm_side.items():
        if attrs[0] == "d":
            assert (deb.get(path) or tmpfiles.get(path)) == attrs, path
    # ...and every directory that is not a plain 0755 root one is the RPM's too.
    special = {p for p, v in deb.items() if v[0] == "d" and v[1:] != ("0755", "root", "root")} | set(tmpfiles)
    assert special == {"/etc/imapd-ctl/nodes", "/etc/imapd-ctl/nodes.d", "/var/lib/imapd-ctl", "/var/log/imapd-ctl"}
    assert special <= set(rpm_side)
    # The conffiles (%config(noreplace) on RHEL).
    rpm_conf = set(subprocess.run(["rpm", "-qcp", str(rpm)], capture_output=True, text=True,
                                  check=True).stdout.split())
    assert rpm_conf == deb_conffiles(built_deb[0])


def test_source_package_builds_and_lintian_finds_nothing_unexplained(tmp_path):
    """The source package (orig tarball from `git archive`, as packaging/README.md says) and
    lintian's source checks (Build-Depends, debian/rules, debian/copyright ...)."""
    dsc = build_source(tmp_path)
    r = subprocess.run(["lintian", "--pedantic", "--display-info", "--show-overrides", str(dsc)],
                       capture_output=True, text=True, timeout=300)
    print("\nlintian --pedantic source:", *[l for l in r.stdout.splitlines() if l.startswith("O: ")], sep="\n  ")
    assert lintian_findings(r.stdout) == [], r.stdout
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_lintian_override_says_why():
    for name in ("imapd-ctl.lintian-overrides", "source/lintian-overrides"):
        assert uncommented_overrides((REPO / "debian" / name).read_text()) == [], name
    assert uncommented_overrides("# why\nimapd-ctl: a\n\nimapd-ctl: b\n") == ["imapd-ctl: b"]   # the check sees one
