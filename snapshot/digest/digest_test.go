package digest

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseHasOneSpelling(t *testing.T) {
	d := Of([]byte("hello"))
	back, err := Parse(d.String())
	if err != nil || back != d {
		t.Fatalf("round trip: %v %v", back, err)
	}
	for _, bad := range []string{"", "00", strings.ToUpper(d.String()), d.String() + "0", " " + d.String()[1:], "../" + d.String()[3:], strings.Repeat("g", 64)} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestTextAndJSON(t *testing.T) {
	type obj struct {
		D Digest `json:"d"`
		Z Digest `json:"z,omitzero"`
	}
	d := Of([]byte("x"))
	data, err := json.Marshal(obj{D: d})
	if err != nil || string(data) != `{"d":"`+d.String()+`"}` {
		t.Fatalf("marshal: %s %v", data, err)
	}
	var back obj
	if err := json.Unmarshal(data, &back); err != nil || back.D != d || !back.Z.IsZero() {
		t.Fatalf("unmarshal: %+v %v", back, err)
	}
	if err := json.Unmarshal([]byte(`{"d":"ABC"}`), &back); err == nil {
		t.Fatal("a bad hexdigest was unmarshalled")
	}
	if (Digest{}).String() != "" || Compare(d, d) != 0 || Compare(Digest{}, d) >= 0 {
		t.Fatal("zero or compare")
	}
}
