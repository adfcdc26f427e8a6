use super::*;

const CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

fn rfc7677() -> Verifier {
    let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap_or_default();
    Verifier::derive(b"pencil", &salt, 4096)
}

/// RFC 7677 §3's example exchange, byte for byte.
#[test]
fn the_rfc_7677_exchange() {
    let (exchange, server_first) =
        Exchange::start(rfc7677(), CLIENT_FIRST, SERVER_NONCE).expect("first");
    assert_eq!(
        server_first,
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    );
    let server_final = exchange.finish(CLIENT_FINAL).expect("final");
    assert_eq!(
        server_final,
        "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    );
}

#[test]
fn a_wrong_password_a_mock_and_a_foreign_nonce_fail() {
    let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap_or_default();
    let wrong = Verifier::derive(b"pencil2", &salt, 4096);
    let (exchange, _) = Exchange::start(wrong, CLIENT_FIRST, SERVER_NONCE).expect("first");
    assert_eq!(exchange.finish(CLIENT_FINAL), Err(ScramError::Proof));

    let real = rfc7677();
    let mock = real.mock("user", b"process secret");
    assert_eq!((&mock.salt, mock.iterations), (&real.salt, real.iterations));
    assert_ne!(mock.stored_key, real.stored_key);
    assert_eq!(mock, real.mock("user", b"process secret"), "stable");
    let (exchange, _) = Exchange::start(mock, CLIENT_FIRST, SERVER_NONCE).expect("first");
    assert_eq!(exchange.finish(CLIENT_FINAL), Err(ScramError::Proof));

    let (exchange, _) = Exchange::start(rfc7677(), CLIENT_FIRST, "another").expect("first");
    assert_eq!(exchange.finish(CLIENT_FINAL), Err(ScramError::Nonce));
}

#[test]
fn the_stored_form_round_trips_and_bad_ones_are_refused() {
    let v = rfc7677();
    let stored = v.to_stored();
    assert!(stored.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
    assert_eq!(Verifier::parse(&stored), Ok(v.clone()));
    assert_eq!(Verifier::from_config(&stored), Ok(v));
    for bad in [
        "SCRAM-SHA-256$",
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
        "SCRAM-SHA-256$0:c2FsdA==$",
        "SCRAM-SHA-256$99999999999:c2FsdA==$a:b",
        "SCRAM-SHA-256$4096:$a:b",
        "SCRAM-SHA-256$x:c2FsdA==$a:b",
        "md5abcdef",
    ] {
        assert!(Verifier::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(Verifier::from_config("pässword"), Err(ScramError::NotAscii));
    let derived = Verifier::from_config("pencil").expect("plaintext");
    assert_eq!(derived, Verifier::derive(b"pencil", &derived.salt, 4096));
    assert_ne!(
        derived.salt,
        Verifier::from_config("pencil").expect("again").salt
    );
}

#[test]
fn malformed_and_channel_bound_first_messages_are_refused() {
    for (first, want) in [
        (
            &b"p=tls-server-end-point,,n=u,r=abc"[..],
            ScramError::ChannelBinding,
        ),
        (
            b"n,a=admin,n=u,r=abc",
            ScramError::Malformed("authorization identity not supported"),
        ),
        (b"n,,r=abc", ScramError::Malformed("user name attribute")),
        (b"n,,n=u,r=", ScramError::Malformed("nonce")),
        (b"n,,n=u", ScramError::Malformed("nonce attribute")),
        (
            b"x,,n=u,r=abc",
            ScramError::Malformed("channel binding flag"),
        ),
        (b"n", ScramError::Malformed("gs2 header")),
        (b"\xff,,", ScramError::Malformed("utf-8")),
    ] {
        let got = Exchange::start(rfc7677(), first, SERVER_NONCE).map(|_| ());
        assert_eq!(got, Err(want), "{:?}", String::from_utf8_lossy(first));
    }
    // A final message that changes the binding flag the first one sent.
    let (exchange, _) = Exchange::start(rfc7677(), CLIENT_FIRST, SERVER_NONCE).expect("first");
    let forged = b"c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA";
    assert_eq!(exchange.finish(forged), Err(ScramError::ChannelBinding));
    let (exchange, _) = Exchange::start(rfc7677(), CLIENT_FIRST, SERVER_NONCE).expect("first");
    assert!(exchange.finish(b"no proof here").is_err());
}

#[test]
fn server_nonces_are_fresh_and_printable() {
    let a = server_nonce().expect("random");
    let b = server_nonce().expect("random");
    assert_ne!(a, b);
    assert!(a.bytes().all(printable));
}
