"""Privacy: user and host obfuscation and the group filter, applied before anything leaves the node.

Both obfuscations can give exactly what the old tool (afmetrics_collector) sent, so that a site's numbers
stay the same at cutover: the default user_hash, sha256, is what its code sends (md5 is what its README says), and a node's name is socket.gethostname() as it sends it, with every digit of it for -O.
"""
import grp
import hashlib
import os
import pwd
import socket

import afmetrics_settings

# user_hash: how -o turns salt + name into the 8 hex digits reported.
USER_HASHES = {
    # The old README: "MD5 hashes username and truncates to the last 8 characters".
    "md5": lambda text: hashlib.md5(text).hexdigest()[-8:],
    # The old tool's code, what sites running it send: sha256((salt + name).encode('utf-8')).hexdigest()[:8].
    "sha256": lambda text: hashlib.sha256(text).hexdigest()[:8],
}


def obfuscate_user(name, salt="", user_hash="sha256"):
    """8 hex digits of user_hash over salt + name (UTF-8), as the old tool and its README have them."""
    return USER_HASHES[user_hash]((salt + name).encode("utf-8"))


def obfuscate_host(hostname, domain):
    """'atlas' + every digit of hostname + '.' + domain, as the old tool does: login1.t2.example.edu gives
    atlas12.DOMAIN (the digits of every label, not only the short name's)."""
    return "atlas%s.%s" % ("".join(char for char in hostname if char.isdigit()), domain)


def host_name():
    """The host's name as the old tool reports it: socket.gethostname(), neither shortened nor extended."""
    return socket.gethostname()


def login_node(opts):
    """The node name documents carry: the login_node setting, else the host name; then -O, which hides an
    overriding login_node as well (login_node = login07.bnl.gov with -O bnl.gov gives atlas07.bnl.gov)."""
    name = getattr(opts, "login_node", "") or host_name()
    domain = getattr(opts, "obfuscate_hosts", "")
    return obfuscate_host(name, domain) if domain else name


def check_user_hash(opts):
    """The user_hash setting, or a UsageError naming where a bad one came from (the command line's choices
    already refused a bad --user-hash: it can only come from AFMETRICS_USER_HASH or the config file)."""
    user_hash = getattr(opts, "user_hash", "sha256")
    if user_hash in USER_HASHES:
        return user_hash
    if os.environ.get("AFMETRICS_USER_HASH"):
        origin = "$AFMETRICS_USER_HASH"
    else:
        origin = afmetrics_settings.config_file(getattr(opts, "config", None))[0] or "config file"
    raise afmetrics_settings.UsageError("%s: bad value for user_hash: %r (expected %s)"
                                        % (origin, user_hash, " or ".join(sorted(USER_HASHES))))


class UserFilter:
    """Applies the group filter and user obfuscation, looking each user up once per run."""

    def __init__(self, opts, logger):
        self.log = logger
        self.user_hash = check_user_hash(opts)
        self.salt = opts.salt
        self.obfuscate = opts.obfuscate_users
        self.group = opts.group
        self.members, self.gid = set(), None
        self.verdicts, self.primary_gids = {}, None
        if self.group:
            try:
                entry = grp.getgrnam(self.group)
                self.gid, self.members = entry.gr_gid, set(entry.gr_mem)
            except KeyError:
                logger.warning("group %s does not exist on this host: every user is left out", self.group)

    def _primary_gid(self, user):
        # With the files backend every getpwnam() reads /etc/passwd from the top, which makes thousands of
        # users quadratic; one pass over what the user database lists keeps it linear. Directory users it
        # does not list (sssd without enumeration) are still looked up one by one.
        if self.primary_gids is None:
            self.primary_gids = {entry.pw_name: entry.pw_gid for entry in pwd.getpwall()}
        if user in self.primary_gids:
            return self.primary_gids[user]
        try:
            return pwd.getpwnam(user).pw_gid
        except KeyError:
            return None

    def _in_group(self, user):
        if user in self.members:
            return True
        gid = self._primary_gid(user)
        if gid is None:
            self.log.debug("user %s is not known on this host: left out by the group filter", user)
        return gid is not None and gid == self.gid

    def report_name(self, user):
        """The name to report for user, or None when the group filter leaves the user out."""
        if user not in self.verdicts:
            if self.group and not self._in_group(user):
                self.verdicts[user] = None
            else:
                self.verdicts[user] = obfuscate_user(user, self.salt, self.user_hash) if self.obfuscate else user
        return self.verdicts[user]

    def report_names(self, users):
        """Sorted, unique report names of the users the filter keeps."""
        return sorted({name for name in map(self.report_name, users) if name is not None})

