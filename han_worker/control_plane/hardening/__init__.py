"""``han-worker harden-check``: verify a running control plane's hardening on its own host.

Runs as the control plane's user, where the control plane runs (on Pegasus: inside the Slurm job's
allocation; the ``han.infra.harden_check`` role runs the env's installed ``han-worker``), and prints one row
per check: ``{check, target, result, detail}`` with ``result`` one of ``pass``, ``fail`` or ``warn``. Exit 0
when nothing failed, 1 when a check failed, 2 on bad input. All read-only; one module per concern:

- ``listen``: every TCP/UDP port of the supervisor's process tree (from ``ss``) binds the configured
  private address; SeaweedFS's internal ports on 127.0.0.1 are a warning; 0.0.0.0 or ``::`` fails unless
  ``--allow-any-address``.
- ``auth``: no credentials and the default ``minioadmin`` are refused by Redis, PostgreSQL and S3.
- ``files``: the state directory, its data, log and run directories, the endpoints, credentials and
  secrets files are ours and private; the env is not group- or world-writable.
- ``leaks``: no secret value appears in the user's process list, the supervisor's environment, the
  state directory's logs and non-secret files, or (Slurm) the job script, job record and job name.
- ``config``: no weak authentication in pg_hba.conf, Redis's settings and ACL, the S3 identities, and no
  weak secret.

``state`` reads the state directory's documents (file names from ``control_plane.layout``), ``processes``
reads ``/proc``, ``checker`` runs the sections in order, ``report`` holds the rows and exit codes;
:mod:`han_worker.cli.harden_check` is the command line. Secret values are compared and never printed: a
row names the secret's field.
"""
