"""The session record: every request, decision, approval and (masked) result, MAC-chained.

* :mod:`bqgate.audit.chain`: events, their canonical encoding and MAC chain, session heads.
* :mod:`bqgate.audit.record`: what each kind of event records, and how it reads back.
* :mod:`bqgate.audit.rejudge`: a recorded session judged again under another policy.

Stored by ``bqgate.adapters.firestore_audit``, verified by :mod:`bqgate.verification`,
shown by ``bqgate sessions`` (:mod:`bqgate.commands.session_views`) and the console.
"""
