"""``tune.report``, ``tune.get_checkpoint``, ``tune.get_context``: inside a trial they reach the
same session as ``ember.train.report`` (a trial's session is Train's, one worker wide)."""

from ember.train import session as train_session


def report(metrics: dict, *, checkpoint=None) -> None:
    """Report one result of the trial (a dict of metrics), with an optional ``Checkpoint`` that is
    persisted into the trial's directory before this returns. Returns when the Tuner asks for the
    next result: a scheduler that stops the trial stops it here."""
    train_session.current().report(metrics, checkpoint)


def get_checkpoint():
    """The checkpoint the trial starts from: its own latest after a retry or restore, another
    trial's after a PBT exploit; None on a fresh start."""
    return train_session.current().checkpoint


def get_context():
    """The running trial's ``TuneContext`` (trial id, name and directory, experiment name)."""
    return train_session.current().context
