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


class UnresolvedName(Exception):
    """The user database could not resolve the filter's group: a source failure (glibc says "not found" alike for a
    group that does not exist and for a directory, sssd or LDAP, that does not answer, and a configured group is
    never rightly absent). A user it cannot resolve is left out, as SPEC.md says of an unknown user: a deleted
    account's finished job must not stop every later run."""


class UserFilter:
    """Applies the group filter and user obfuscation, looking each user up once per run.

    A collector calls decide() with every user it will report before it makes its first document: a group the
    user database cannot resolve then costs the run its documents (one error, exit 1, no cursor moved), never
    documents that leave every user out, nor events sent before the failure and again by the run after it.
    """

    def __init__(self, opts, logger):
        self.log = logger
        self.user_hash = check_user_hash(opts)
        self.salt = opts.salt
        self.obfuscate = opts.obfuscate_users
        self.group = opts.group
        self.members, self.gid = None, None  # the group's, once resolved
        self.verdicts, self.primary_gids = {}, None

    def _resolve_group(self):
        if self.members is None:
            try:
                entry = grp.getgrnam(self.group)
            except KeyError:
                raise UnresolvedName("group %s cannot be resolved (getgrnam: no such group, or the user directory "
                                     "is down): users cannot be filtered" % self.group)
            self.gid, self.members = entry.gr_gid, set(entry.gr_mem)

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
            self.log.debug("user %s is not known on this host: left out by the group filter", user)
            return None

    def _in_group(self, user):
        return user in self.members or self._primary_gid(user) == self.gid

    def decide(self, users):
        """Decide on each of users now; raises UnresolvedName for a group the user database cannot resolve (when
        there is one, with or without users)."""
        if self.group:
            self._resolve_group()
        for user in users:
            if user not in self.verdicts:
                if self.group and not self._in_group(user):
                    self.verdicts[user] = None
                else:
                    self.verdicts[user] = obfuscate_user(user, self.salt, self.user_hash) if self.obfuscate else user

    def report_name(self, user):
        """The name to report for user, or None when the group filter leaves the user out; decided now when
        decide() was not given it (raising UnresolvedName as decide() does)."""
        if user not in self.verdicts:
            self.decide([user])
        return self.verdicts[user]

    def report_names(self, users):
        """Sorted, unique report names of the users the filter keeps; all decided before any is named."""
        users = set(users)
        self.decide(users)
        return sorted({self.verdicts[user] for user in users} - {None})
