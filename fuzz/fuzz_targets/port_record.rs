//! Port record and manifest (the runtime directory's files, and the hello a
//! port sends): parse → emit → parse round trip; both formats are
//! canonical, so what parses emits back to the same bytes; parsing never
//! panics.
//!
//! Input byte 0 picks the mode. Bit 0: a manifest (else a port record).
//! Bit 1: store the right CRC-32 before parsing, so the fuzzer reaches the
//! success path and the checks a random checksum would otherwise end in.
//! The rest of the input is the record or manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmnet::shm::record::{
    MANIFEST_LEN, Manifest, ManifestRepr, PortRecord, RECORD_LEN, RecordRepr,
};

fn record(bytes: &mut [u8], fix_checksum: bool) {
    if fix_checksum && bytes.len() >= RECORD_LEN {
        PortRecord::new_unchecked(&mut *bytes).fill_checksum();
    }
    let Ok(r) = PortRecord::new_checked(&*bytes) else {
        return;
    };
    let Ok(repr) = RecordRepr::parse(&r) else {
        return;
    };
    assert!(repr.check().is_ok(), "a parsed record can be emitted whole");
    let mut out = [0u8; RECORD_LEN];
    assert_eq!(repr.buffer_len(), out.len());
    repr.emit(&mut PortRecord::new_unchecked(&mut out[..]));
    assert_eq!(&out[..], &bytes[..RECORD_LEN], "the record is canonical");
    let again =
        RecordRepr::parse(&PortRecord::new_unchecked(&out[..])).expect("an emitted record parses");
    assert_eq!(again, repr);
}

fn manifest(bytes: &mut [u8], fix_checksum: bool) {
    if fix_checksum && bytes.len() >= MANIFEST_LEN {
        Manifest::new_unchecked(&mut *bytes).fill_checksum();
    }
    let Ok(m) = Manifest::new_checked(&*bytes) else {
        return;
    };
    let Ok(repr) = ManifestRepr::parse(&m) else {
        return;
    };
    let mut out = [0u8; MANIFEST_LEN];
    assert_eq!(repr.buffer_len(), out.len());
    repr.emit(&mut Manifest::new_unchecked(&mut out[..]));
    assert_eq!(
        &out[..],
        &bytes[..MANIFEST_LEN],
        "the manifest is canonical"
    );
    let again = ManifestRepr::parse(&Manifest::new_unchecked(&out[..]))
        .expect("an emitted manifest parses");
    assert_eq!(again, repr);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 0 {
        record(&mut bytes, mode & 2 != 0);
    } else {
        manifest(&mut bytes, mode & 2 != 0);
    }
});
