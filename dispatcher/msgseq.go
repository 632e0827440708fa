package dispatcher

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
)

// withMsgSeq returns body with "msg_seq": seq added when the pipeline chose
// the seq (the producer gave none). The producer's bytes are otherwise kept
// as written, so unknown fields pass through untouched.
func withMsgSeq(body json.RawMessage, seq, producerSeq int) (json.RawMessage, error) {
	if seq == 0 || producerSeq != 0 {
		return body, nil
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, errors.New("message is not a JSON object")
	}
	rest := trimmed[1:]
	field := `"msg_seq":` + strconv.Itoa(seq)
	out := make([]byte, 0, len(body)+len(field)+2)
	out = append(out, '{')
	out = append(out, field...)
	if r := bytes.TrimLeft(rest, " \t\r\n"); len(r) > 0 && r[0] != '}' {
		out = append(out, ',')
	}
	out = append(out, rest...)
	return out, nil
}

// prefixOf is the subject prefix of opts, defaulted.
func prefixOf(opts DecodeOptions) string {
	if opts.Prefix == "" {
		return DefaultPrefix
	}
	return opts.Prefix
}
