//! Twofish-256-GCM through libgcrypt (Debian `libgcrypt20`), the GnuPG project's cryptographic
//! library.
//!
//! Why not RustCrypto here: its `twofish` crate recomputes the key-dependent S-boxes inside
//! every round of every block (no tables), which measured below 10 MB/s on this machine, so a
//! 1 GiB file took minutes. libgcrypt's Twofish keeps full key tables and has x86-64/AVX2 bulk
//! code, and its GCM mode works over any 128-bit block cipher. The construction is the same
//! NIST SP 800-38D GCM as before (12-byte nonce, 16-byte tag), so files written with either
//! implementation read with the other; the format's test vectors check it.
//!
//! Only a handful of libgcrypt calls are bound; nothing cryptographic is computed here.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::{Mutex, OnceLock};

use crate::crypto::{AuthFailed, NONCE_LEN, TAG_LEN};
use crate::error::{Result, VfsError};

type GcryError = c_uint;
#[repr(C)]
struct Handle {
    _private: [u8; 0],
}
type Hd = *mut Handle;
/// `gcry_cipher_encrypt` / `gcry_cipher_decrypt`: (handle, out, out length, in, in length).
type CryptFn = unsafe extern "C" fn(Hd, *mut c_void, usize, *const c_void, usize) -> GcryError;

const GCRY_CIPHER_TWOFISH: c_int = 10;
const GCRY_CIPHER_MODE_GCM: c_int = 9;
const GCRYCTL_DISABLE_SECMEM: c_int = 37;
const GCRYCTL_INITIALIZATION_FINISHED: c_int = 38;
/// The oldest libgcrypt whose GCM accepts any 128-bit block cipher and is thread-safe without
/// set-up by the application.
const MIN_VERSION: &[u8] = b"1.8.0\0";

#[link(name = "gcrypt")]
extern "C" {
    fn gcry_check_version(req: *const c_char) -> *const c_char;
    fn gcry_control(cmd: c_int, ...) -> GcryError;
    fn gcry_cipher_open(hd: *mut Hd, algo: c_int, mode: c_int, flags: c_uint) -> GcryError;
    fn gcry_cipher_close(hd: Hd);
    fn gcry_cipher_setkey(hd: Hd, key: *const c_void, len: usize) -> GcryError;
    fn gcry_cipher_setiv(hd: Hd, iv: *const c_void, len: usize) -> GcryError;
    fn gcry_cipher_authenticate(hd: Hd, a: *const c_void, len: usize) -> GcryError;
    fn gcry_cipher_encrypt(
        h: Hd,
        o: *mut c_void,
        ol: usize,
        i: *const c_void,
        il: usize,
    ) -> GcryError;
    fn gcry_cipher_decrypt(
        h: Hd,
        o: *mut c_void,
        ol: usize,
        i: *const c_void,
        il: usize,
    ) -> GcryError;
    fn gcry_cipher_gettag(hd: Hd, tag: *mut c_void, len: usize) -> GcryError;
    fn gcry_cipher_checktag(hd: Hd, tag: *const c_void, len: usize) -> GcryError;
}

/// libgcrypt must be initialised once per process before its first use.
fn init() -> Result<()> {
    static READY: OnceLock<bool> = OnceLock::new();
    let ok = *READY.get_or_init(|| {
        // SAFETY: gcry_check_version and gcry_control are the documented first calls; the
        // version string is NUL-terminated. Secure memory is only for GCRY_CIPHER_SECURE
        // handles, which are not used (keys are zeroized by the callers' types instead).
        unsafe {
            if gcry_check_version(MIN_VERSION.as_ptr().cast()).is_null() {
                return false;
            }
            gcry_control(GCRYCTL_DISABLE_SECMEM, 0 as c_int);
            gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0 as c_int);
        }
        true
    });
    if ok {
        Ok(())
    } else {
        Err(VfsError::Key(
            "twofish-256-gcm needs libgcrypt 1.8 or newer (Debian libgcrypt20)".into(),
        ))
    }
}

/// One keyed libgcrypt handle. A handle carries per-message state, so it is used by one
/// thread at a time; [`TwofishGcm`] keeps a few.
struct Keyed(Hd);

// SAFETY: a libgcrypt handle may move between threads; it is never used by two at once (it is
// owned by one `Keyed`, handed out by a mutex-guarded pool).
unsafe impl Send for Keyed {}

impl Drop for Keyed {
    fn drop(&mut self) {
        // SAFETY: the handle came from gcry_cipher_open and is closed once. Closing wipes
        // the key schedule.
        unsafe { gcry_cipher_close(self.0) }
    }
}

impl Keyed {
    fn open(key: &[u8; 32]) -> Result<Keyed> {
        let mut hd: Hd = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; algorithm and mode are valid constants.
        let e = unsafe { gcry_cipher_open(&mut hd, GCRY_CIPHER_TWOFISH, GCRY_CIPHER_MODE_GCM, 0) };
        if e != 0 || hd.is_null() {
            return Err(VfsError::Key(format!(
                "libgcrypt cannot open Twofish-GCM (error {e})"
            )));
        }
        let k = Keyed(hd);
        // SAFETY: the key buffer is 32 readable bytes.
        let e = unsafe { gcry_cipher_setkey(k.0, key.as_ptr().cast(), key.len()) };
        if e != 0 {
            return Err(VfsError::Key(format!(
                "libgcrypt refused the Twofish key (error {e})"
            )));
        }
        Ok(k)
    }

    /// Starts a message: nonce, then associated data.
    fn start(&mut self, nonce: &[u8; NONCE_LEN], aad: &[u8]) -> bool {
        // SAFETY: buffers are valid for the lengths given; the handle is ours alone.
        unsafe {
            gcry_cipher_setiv(self.0, nonce.as_ptr().cast(), nonce.len()) == 0
                && (aad.is_empty()
                    || gcry_cipher_authenticate(self.0, aad.as_ptr().cast(), aad.len()) == 0)
        }
    }

    /// Encrypts in place (libgcrypt's documented in-place form: no input buffer).
    fn encrypt(&mut self, data: &mut [u8]) -> bool {
        self.in_place(gcry_cipher_encrypt, data)
    }

    fn decrypt(&mut self, data: &mut [u8]) -> bool {
        self.in_place(gcry_cipher_decrypt, data)
    }

    fn in_place(&mut self, op: CryptFn, data: &mut [u8]) -> bool {
        // SAFETY: `data` is valid for writes of its length; the handle is ours alone.
        unsafe {
            op(
                self.0,
                data.as_mut_ptr().cast(),
                data.len(),
                std::ptr::null(),
                0,
            ) == 0
        }
    }
}

/// Twofish-256 in GCM: seal and open in place, callable from many threads at once.
pub struct TwofishGcm {
    key: zeroize::Zeroizing<[u8; 32]>,
    pool: Mutex<Vec<Keyed>>,
}

/// Handles kept for reuse: one per thread that seals or opens segments at once is enough.
const POOL: usize = 16;

impl TwofishGcm {
    pub fn new(key: &[u8]) -> Result<TwofishGcm> {
        init()?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| VfsError::Key("twofish-256-gcm takes a 32-byte key".into()))?;
        let first = Keyed::open(&key)?;
        Ok(TwofishGcm {
            key: zeroize::Zeroizing::new(key),
            pool: Mutex::new(vec![first]),
        })
    }

    fn take(&self) -> Option<Keyed> {
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        pooled.or_else(|| Keyed::open(&self.key).ok())
    }

    fn give(&self, k: Keyed) {
        if let Ok(mut p) = self.pool.lock() {
            if p.len() < POOL {
                p.push(k);
            }
        }
    }

    /// Encrypts `data` in place and returns the tag; `None` only if libgcrypt fails, which
    /// it does not for valid lengths.
    pub fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
    ) -> Option<[u8; TAG_LEN]> {
        let mut k = self.take()?;
        let mut tag = [0u8; TAG_LEN];
        // SAFETY (gettag): the tag buffer holds TAG_LEN bytes.
        let ok = k.start(nonce, aad)
            && k.encrypt(data)
            && unsafe { gcry_cipher_gettag(k.0, tag.as_mut_ptr().cast(), TAG_LEN) } == 0;
        if ok {
            // A handle that failed is in an unknown state: only good ones go back.
            self.give(k);
        }
        ok.then_some(tag)
    }

    /// Verifies and decrypts in place. libgcrypt checks the tag after decrypting, so on a
    /// failed check the keystream is applied once more to give the caller its ciphertext back
    /// unchanged (CTR is its own inverse), as the RustCrypto AEADs leave it.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthFailed> {
        let mut k = self.take().ok_or(AuthFailed)?;
        let started = k.start(nonce, aad);
        let decrypted = started && k.decrypt(data);
        if !decrypted {
            // Nothing was decrypted, but the handle's state is unknown: do not pool it.
            return Err(AuthFailed);
        }
        // SAFETY: the tag buffer holds TAG_LEN bytes.
        let verified = unsafe { gcry_cipher_checktag(k.0, tag.as_ptr().cast(), TAG_LEN) } == 0;
        if !verified {
            // Restore: same key and nonce, so encrypting again re-applies the same keystream.
            // The message is then finished with a tag nobody reads: libgcrypt 1.10 mis-tags the
            // handle's next message after an unfinished one.
            let mut scratch = [0u8; TAG_LEN];
            // SAFETY: the scratch buffer holds TAG_LEN bytes.
            let restored = k.start(nonce, aad)
                && k.encrypt(data)
                && unsafe { gcry_cipher_gettag(k.0, scratch.as_mut_ptr().cast(), TAG_LEN) } == 0;
            if !restored {
                // The handle is in an unknown state: drop it rather than pool it.
                return Err(AuthFailed);
            }
        }
        self.give(k);
        if verified {
            Ok(())
        } else {
            Err(AuthFailed)
        }
    }
}
