//! `cargo run --release` here: per-verification µs of each library over
//! the same key, message and signature, five interleaved rounds.

use std::time::Instant;

use ring::signature::{self, KeyPair};

const N: u32 = 20_000;

fn main() {
    let rng = ring::rand::SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    // About the size of an RRSIG's signed data for one A record.
    let msg = [7u8; 120];
    let sig = pair.sign(&rng, &msg).unwrap().as_ref().to_vec();
    let time = |verify: &dyn Fn()| {
        let t = Instant::now();
        for _ in 0..N {
            verify();
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(N)
    };
    for round in 1..=5 {
        let r = time(&|| {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &public).verify(&msg, &sig).unwrap()
        });
        let a = time(&|| {
            aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED, &public)
                .verify(&msg, &sig)
                .unwrap()
        });
        println!("round {round}: ring {r:.1} µs, aws-lc-rs {a:.1} µs, aws-lc-rs/ring {:.2}", a / r);
    }
}
