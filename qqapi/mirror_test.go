package qqapi_test

import (
	"testing"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/qqapi"
)

// TestClassesMirrorDispatcher: qqapi.Class and dispatcher.ErrorClass are the
// same list, value for value, so the Sender adapter converts by number. (An
// external test package: qqapi itself imports nothing of the project.)
func TestClassesMirrorDispatcher(t *testing.T) {
	t.Parallel()
	last := int(qqapi.ClassPermanent)
	if int(dispatcher.ClassPermanent) != last {
		t.Fatalf("last class: qqapi %d, dispatcher %d", last, dispatcher.ClassPermanent)
	}
	for i := 0; i <= last+1; i++ { // last+1: both lists end there
		if q, d := qqapi.Class(i).String(), dispatcher.ErrorClass(i).String(); q != d {
			t.Errorf("class %d: qqapi %q, dispatcher %q", i, q, d)
		}
	}
}
