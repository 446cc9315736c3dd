"""Privacy: user and host obfuscation and the group filter, applied before anything leaves the node."""
import grp
import hashlib
import pwd
import socket


def obfuscate_user(name, salt=""):
    return hashlib.md5((salt + name).encode("utf-8")).hexdigest()[-8:]


def obfuscate_host(hostname, domain):
    digits = "".join(char for char in hostname.split(".")[0] if char.isdigit())
    return "atlas%s.%s" % (digits, domain)


def host_name():
    """The host's name as the old tool reports it: socket.gethostname(), neither shortened nor extended."""
    return socket.gethostname()


def fully_qualified_hostname():
    # getfqdn() answers "localhost" where the host name resolves to a loopback address; keep the
    # host's own name unless the lookup really extends it.
    name = socket.gethostname()
    fqdn = socket.getfqdn(name)
    return fqdn if fqdn.startswith(name + ".") else name


def login_node(opts):
    name = fully_qualified_hostname()
    return obfuscate_host(name, opts.obfuscate_hosts) if opts.obfuscate_hosts else name


class UserFilter:
    """Applies the group filter and user obfuscation, looking each user up once per run."""

    def __init__(self, opts, logger):
        self.log = logger
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
            keep = not self.group or self._in_group(user)
            self.verdicts[user] = (obfuscate_user(user, self.salt) if self.obfuscate else user) if keep else None
        return self.verdicts[user]

    def report_names(self, users):
        """Sorted, unique report names of the users the filter keeps."""
        return sorted({name for name in map(self.report_name, users) if name is not None})

