package ocistore

import "testing"

func TestRangeBounds(t *testing.T) {
	tests := []struct {
		off        uint64
		length     uint32
		size       uint64
		last, want uint64
	}{
		{0, 10, 100, 9, 10},
		{90, 10, 100, 99, 10},
		{95, 10, 100, 99, 5}, // clipped at the end
		{99, 1, 100, 99, 1},
		{5, 0, 100, 5, 0}, // empty: ask one byte, keep none
		{100, 1, 100, 100, 1},
		{200, 10, 100, 209, 10}, // past the end: the registry answers 416
		{^uint64(0) - 1, 10, 100, ^uint64(0), 2},
	}
	for _, tt := range tests {
		last, want := rangeBounds(tt.off, tt.length, tt.size)
		if last != tt.last || want != tt.want {
			t.Errorf("rangeBounds(%d, %d, %d) = %d, %d; want %d, %d", tt.off, tt.length, tt.size, last, want, tt.last, tt.want)
		}
	}
}

func TestContentRangeStart(t *testing.T) {
	tests := []struct {
		v    string
		want uint64
		ok   bool
	}{
		{"bytes 10-19/100", 10, true},
		{"bytes 0-0/*", 0, true},
		{"Bytes  7-9/10", 7, true},
		{" bytes 3-4/5 ", 3, true},
		{"", 0, false},
		{"bytes */100", 0, false},
		{"items 1-2/3", 0, false},
		{"bytes x-2/3", 0, false},
	}
	for _, tt := range tests {
		got, ok := contentRangeStart(tt.v)
		if got != tt.want || ok != tt.ok {
			t.Errorf("contentRangeStart(%q) = %d, %v", tt.v, got, ok)
		}
	}
}
