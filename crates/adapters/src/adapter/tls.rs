//! Trusting exactly one certificate by its fingerprint, for management software whose
//! certificates are self-signed (vCenter, BMCs).
//!
//! Pinning is how vSphere tooling trusts vCenter (`govc`'s known hosts, the vSphere Client's
//! thumbprint prompt) and the only way to trust a BMC whose self-signed certificate is marked
//! `CA:TRUE`, which rustls refuses as a server certificate even when it is given as the trusted
//! CA. reqwest has no such option, so this module has a small rustls certificate verifier: the
//! server's end-entity certificate must hash (SHA-256, or SHA-1 for a 20-byte thumbprint) to the
//! pinned value; handshake signatures are still checked with rustls' own algorithms. Names and
//! dates are not checked: the pin names the one certificate that is trusted.
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

/// Parse a hex thumbprint (`AA:BB:…` or `aabb…`) of 20 or 32 bytes.
pub fn parse_thumbprint(s: &str) -> Result<Vec<u8>, String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if !hex.len().is_multiple_of(2) {
        return Err(format!("thumbprint {s:?} is not whole bytes of hex"));
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("thumbprint {s:?} is not hex"))?;
    match bytes.len() {
        20 | 32 => Ok(bytes),
        n => Err(format!(
            "thumbprint {s:?} has {n} bytes; SHA-1 has 20 and SHA-256 32"
        )),
    }
}

/// The thumbprint of a DER certificate, of the length of `like` (20: SHA-1, else SHA-256).
pub fn thumbprint_of(der: &[u8], len: usize) -> Vec<u8> {
    let alg = if len == 20 {
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY
    } else {
        &ring::digest::SHA256
    };
    ring::digest::digest(alg, der).as_ref().to_vec()
}

#[derive(Debug)]
struct Pinned {
    thumbprint: Vec<u8>,
    /// Whose certificate it is, for the error (`vCenter`, `the BMC`).
    who: &'static str,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use subtle::ConstantTimeEq;
        let got = thumbprint_of(end_entity.as_ref(), self.thumbprint.len());
        if bool::from(got.ct_eq(&self.thumbprint)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "{}'s certificate does not match the pinned fingerprint",
                self.who
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client configuration that trusts only the certificate hashing to `fingerprint`
/// (hex, with or without colons); `who` names its owner in errors.
pub fn pinned_config(fingerprint: &str, who: &'static str) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                thumbprint: parse_thumbprint(fingerprint)?,
                who,
                provider,
            }))
            .with_no_client_auth(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_parse_with_or_without_colons() {
        let sha1 = "AB:".repeat(19) + "AB";
        assert_eq!(parse_thumbprint(&sha1).expect("sha1").len(), 20);
        assert_eq!(
            parse_thumbprint(&"0f".repeat(32)).expect("sha256").len(),
            32
        );
        assert!(parse_thumbprint("abc").is_err());
        assert!(parse_thumbprint(&"zz".repeat(20)).is_err());
        assert!(parse_thumbprint(&"00".repeat(16))
            .unwrap_err()
            .contains("16 bytes"));
    }

    #[test]
    fn thumbprints_hash_the_certificate() {
        assert_eq!(thumbprint_of(b"x", 20).len(), 20);
        assert_eq!(thumbprint_of(b"x", 32).len(), 32);
        assert_ne!(thumbprint_of(b"x", 32), thumbprint_of(b"y", 32));
    }
}
