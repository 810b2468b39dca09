//! Re-keying a volume for `keyward migrate vfs rekey`: not written yet.
