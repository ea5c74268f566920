// crdcheck runs kube-apiserver's own CustomResourceDefinition validation on a CRD file,
// offline: the structural-schema rules, list-map keys, and the compilation and estimated
// cost of every CEL rule (a rule over unbounded strings or lists can exceed the budget, and
// the API server then refuses the whole CRD, which no unit test of ours would notice).
//
// usage: crdcheck FILE.yaml (built and run by hack/check-crd-schema.sh)
package main

import (
	"context"
	"fmt"
	"os"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: crdcheck FILE.yaml")
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	v1 := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.UnmarshalStrict(data, v1); err != nil {
		panic(err)
	}
	scheme := runtime.NewScheme()
	_ = apiextensions.AddToScheme(scheme)
	_ = apiextensionsv1.AddToScheme(scheme)
	scheme.Default(v1)
	internal := &apiextensions.CustomResourceDefinition{}
	if err := scheme.Convert(v1, internal, nil); err != nil {
		panic(err)
	}
	errs := validation.ValidateCustomResourceDefinition(context.TODO(), internal)
	for _, e := range errs {
		fmt.Println(e)
	}
	if len(errs) > 0 {
		os.Exit(1)
	}
	fmt.Printf("%s: accepted by kube-apiserver's CRD validation (structural schema, CEL cost)\n", os.Args[1])
}
