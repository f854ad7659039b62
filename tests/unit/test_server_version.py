"""The IMAP server's version for /metrics' build_info: Dovecot's as `doveconf -n` states it,
Courier's package's from dpkg's database (read, never run)."""
from imapd_ctl.adapters.flavours.courier import flavour as courier_mod
from imapd_ctl.adapters.flavours.dovecot import readings


def test_dovecot_states_its_version_on_doveconfs_first_line():
    assert readings.full_version("# 2.3.19.1 (9b53102964): /etc/dovecot/dovecot.conf\n# OS: Linux\n") == "2.3.19.1"
    assert readings.full_version("# 2.4.1-4 (7d8c0e5759): /etc/dovecot/dovecot.conf\n") == "2.4.1-4"
    assert readings.full_version("protocols = imap\n") == ""


def test_courier_is_the_packages_version_from_dpkgs_database(tmp_path, monkeypatch):
    status = tmp_path / "status"
    status.write_text("Package: courier-imap-ssl\nStatus: install ok installed\nVersion: 4.0\n\n"
                      "Package: courier-imap\nStatus: install ok installed\nVersion: 5.2.2-2+b1\n\n"
                      "Package: zsh\nVersion: 5.9\n")
    monkeypatch.setattr(courier_mod, "DPKG_STATUS", str(status))
    assert courier_mod.package_version("courier-imap") == "5.2.2-2+b1"
    status.write_text("Package: zsh\nVersion: 5.9\n")
    assert courier_mod.package_version("courier-imap") == ""
    monkeypatch.setattr(courier_mod, "DPKG_STATUS", str(tmp_path / "none"))
    assert courier_mod.package_version("courier-imap") == ""
