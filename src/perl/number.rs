//! Perl's numbers as text: how Perl stringifies a floating-point number (which is what
//! `nfreeze` stores for one), and reading numbers back from strings.

/// Significant digits Perl prints of a double (`NV_DIG`: it formats with `%.15g`).
const NV_DIG: usize = 15;

/// Integers of at most this magnitude are exact in a double (Perl's `NV_PRESERVES_UV_BITS`).
const NV_EXACT_INT: f64 = (1u64 << 53) as f64;

/// A double as Perl stringifies it: `%.15g`, with `Inf`, `-Inf`, `NaN`, and `0` for both
/// zeros.
pub(crate) fn nv_to_string(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Inf" } else { "-Inf" }.into();
    }
    if x == 0.0 {
        return "0".into();
    }
    // d.dddddddddddddde<exp>, correctly rounded (ties to even, as glibc's printf).
    let sci = format!("{:.*e}", NV_DIG - 1, x);
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    if exp < -4 || exp >= NV_DIG as i32 {
        let (first, rest) = digits.split_at(1);
        let point = if rest.is_empty() { "" } else { "." };
        let esign = if exp < 0 { '-' } else { '+' };
        format!(
            "{sign}{first}{point}{rest}e{esign}{:02}",
            exp.unsigned_abs()
        )
    } else if exp < 0 {
        let zeros = "0".repeat((-exp - 1) as usize);
        format!("{sign}0.{zeros}{digits}")
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            format!("{sign}{digits}{}", "0".repeat(int_len - digits.len()))
        } else {
            let (int, frac) = digits.split_at(int_len);
            format!("{sign}{int}.{frac}")
        }
    }
}

/// The integer Perl stores for a double when it can (`SvIV_please`): an integral value of
/// magnitude below 2⁵³.
pub(crate) fn nv_as_iv(x: f64) -> Option<i64> {
    (x.fract() == 0.0 && x.abs() < NV_EXACT_INT).then_some(x as i64)
}

/// An integer from a Perl string holding one (`"42"`, `"-7"`).
pub(crate) fn parse_i64(s: &str) -> Option<i64> {
    s.parse().ok()
}

/// An unsigned integer from a Perl string (Storable stores integers above `i64::MAX` as
/// decimal strings).
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    s.parse().ok()
}

/// A double from a Perl string holding one: decimal or exponent notation, `Inf`, `-Inf`,
/// `NaN` (what Perl and `nfreeze` write).
pub(crate) fn parse_f64(s: &str) -> Option<f64> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_print_as_perl_prints_them() {
        // Each pair checked against Perl 5.36's `my $x = 1e15; print "$x"`.
        for (x, perl) in [
            (1.5, "1.5"),
            (0.1, "0.1"),
            (1.0 / 3.0, "0.333333333333333"),
            (-2.5e-7, "-2.5e-07"),
            (1e100, "1e+100"),
            (1e15, "1e+15"),
            (123456789012345.0, "123456789012345"),
            (100000000000000.5, "100000000000000"),
            (9007199254740992.0, "9.00719925474099e+15"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (12.5, "12.5"),
            (-0.0, "0"),
            (f64::INFINITY, "Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(nv_to_string(x), perl, "{x:e}");
        }
    }

    #[test]
    fn perl_stores_small_integral_doubles_as_integers() {
        assert_eq!(nv_as_iv(2.0), Some(2));
        assert_eq!(nv_as_iv(-0.0), Some(0));
        assert_eq!(nv_as_iv(2.5), None);
        assert_eq!(nv_as_iv(9007199254740991.0), Some(9007199254740991));
        assert_eq!(nv_as_iv(9007199254740992.0), None);
        assert_eq!(nv_as_iv(f64::NAN), None);
        assert_eq!(nv_as_iv(f64::INFINITY), None);
    }

    #[test]
    fn perl_number_strings_parse() {
        assert_eq!(parse_f64("Inf"), Some(f64::INFINITY));
        assert_eq!(parse_f64("-Inf"), Some(f64::NEG_INFINITY));
        assert!(parse_f64("NaN").is_some_and(f64::is_nan));
        assert_eq!(parse_f64("1e+100"), Some(1e100));
        assert_eq!(parse_i64("-42"), Some(-42));
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_i64("4x"), None);
    }
}
